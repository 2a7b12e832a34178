from recording_bridge.cli import main

main()
