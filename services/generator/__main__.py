from shared.runner import main

main("generator")
