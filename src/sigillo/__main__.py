from sigillo.cli import main

main()
