from shared.runner import main

main("image")
