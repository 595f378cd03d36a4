from selectkit.cli import main

main()
