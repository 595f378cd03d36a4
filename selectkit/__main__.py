from selectkit.cli.commands import main

main()
