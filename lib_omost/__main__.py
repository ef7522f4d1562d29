from lib_omost.cli import main

raise SystemExit(main())
