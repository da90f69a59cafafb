from plasticity_lab.lab.cli import main

raise SystemExit(main())
