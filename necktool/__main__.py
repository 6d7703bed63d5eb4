from necktool.cli import main

main()
