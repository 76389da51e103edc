from torro.cli import main


main()
