from dcs_cli.cli.app import main

main()
