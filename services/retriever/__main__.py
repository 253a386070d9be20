from shared.runner import main

main("retriever")
