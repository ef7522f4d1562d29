from lib_omost.cli import main, take_ctrl_c

take_ctrl_c()
raise SystemExit(main())
