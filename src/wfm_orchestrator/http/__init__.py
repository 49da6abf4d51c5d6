"""The HTTP server: everything that subclasses or touches waitress lives here, and only here.

server.py builds it and runs its loop; channel.py serves and holds answers on
the loop; dispatcher.py chooses the loop or a worker thread; parser.py and
task.py are waitress' per-request code made faster (and stricter). The private
names of waitress used here are listed in tests/unit/test_waitress_contract.py.
"""
