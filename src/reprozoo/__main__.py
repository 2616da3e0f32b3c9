from reprozoo.cli import main

main()
