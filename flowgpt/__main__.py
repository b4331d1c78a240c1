from flowgpt.cli import main

main()
