from shared.runner import main

main("orchestrator")
