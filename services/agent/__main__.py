from shared.runner import main

main("agent")
