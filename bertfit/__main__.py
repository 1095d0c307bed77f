from bertfit.cli import main

main()
