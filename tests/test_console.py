"""Result tables: lists stay in the JSON, figures that do not apply print as a dash."""

from dcs_cli.console import print_table


def test_tables_leave_list_columns_to_the_json(capsys):
    print_table("bench", [{"name": "hf", "val_top1": 91.5, "val_top1_runs": [90.25, 92.75]}])
    printed = capsys.readouterr().out
    assert "val_top1" in printed and "91.5" in printed
    assert "val_top1_runs" not in printed and "90.25" not in printed
    print_table("bench", [{"name": "hf", "val_top1_runs": [90.25]}], columns=["name", "val_top1_runs"])
    assert "[90.25]" in capsys.readouterr().out  # columns named explicitly are printed as asked


def test_figures_that_do_not_apply_print_as_a_dash(capsys):
    print_table("select-speed", [{"name": "full", "recall": float("nan"), "speedup": 1.0}])
    printed = capsys.readouterr().out
    assert "–" in printed and "nan" not in printed
