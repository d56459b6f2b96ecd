from dcs_cli.cli.app import main

if __name__ == "__main__":  # spawned workers import this module; only the real entry runs the CLI
    main()
