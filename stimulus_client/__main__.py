from stimulus_client.app import main

raise SystemExit(main())
