from fundus_cli.cli import main

main()
