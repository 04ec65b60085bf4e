from pulse_relay.cli import main

main()
