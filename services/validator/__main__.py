from shared.runner import main

main("validator")
