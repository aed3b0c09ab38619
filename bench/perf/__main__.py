"""`python -m bench.perf --worker`: one worker process; otherwise the same as `python -m bench perf`."""

import sys

if "--worker" in sys.argv[1:]:
    from bench.perf.worker import worker_main

    worker_main()
else:
    from bench.perf.driver import main

    main(sys.argv[1:])
