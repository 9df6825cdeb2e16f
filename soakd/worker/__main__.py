from soakd.worker.main import main

raise SystemExit(main())
