from shared.runner import main

main("video")
