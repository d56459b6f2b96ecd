"""Result tables: lists stay in the JSON."""

from dcs_cli.console import print_table


def test_tables_leave_list_columns_to_the_json(capsys):
    print_table("bench", [{"name": "hf", "val_top1": 91.5, "val_top1_runs": [90.25, 92.75]}])
    printed = capsys.readouterr().out
    assert "val_top1" in printed and "91.5" in printed
    assert "val_top1_runs" not in printed and "90.25" not in printed
    print_table("bench", [{"name": "hf", "val_top1_runs": [90.25]}], columns=["name", "val_top1_runs"])
    assert "[90.25]" in capsys.readouterr().out  # columns named explicitly are printed as asked
