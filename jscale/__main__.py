from jscale.cli import main

raise SystemExit(main())
