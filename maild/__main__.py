from maild.launch import main

raise SystemExit(main())
