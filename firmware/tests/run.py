# MicroPython-side unit test runner: `micropython firmware/tests/run.py [module ...]`, run with
# MICROPYPATH=firmware/host:firmware/common:.frozen and a scratch directory as cwd.
# Runs every test_* function of every test_*.py module next to this file (async ones too),
# prints one line per test and a summary, and exits 1 when anything failed.
import asyncio
import os
import sys

HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, HERE)


def main(names):
    if not names:
        names = sorted(
            n[:-3] for n in os.listdir(HERE) if n.startswith("test_") and n.endswith(".py")
        )
    passed = failed = 0
    for name in names:
        mod = __import__(name)
        for attr in sorted(dir(mod)):
            if not attr.startswith("test_"):
                continue
            fn = getattr(mod, attr)
            try:
                r = fn()
                if hasattr(r, "send"):  # a coroutine: a hang becomes a failure
                    asyncio.run(asyncio.wait_for_ms(r, 20000))
                passed += 1
                print("PASS", name, attr)
            except Exception as e:  # report every failure and go on
                failed += 1
                print("FAIL", name, attr)
                sys.print_exception(e)
    print("RESULT passed=%d failed=%d" % (passed, failed))
    sys.exit(1 if failed or not passed else 0)


main(sys.argv[1:])
