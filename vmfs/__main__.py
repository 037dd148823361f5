from vmfs.cli import main

raise SystemExit(main())
