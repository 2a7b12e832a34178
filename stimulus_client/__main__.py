from stimulus_client.cli import main

main()
