"""Runs the binding's unittest suites and ends with the line CI reads:
    python: N passed, N failed[, N skipped]

    LDM_LIBRARY=build/libldm.so.0 python3 bindings/python/tests/run.py [-v]

The package is imported from this checkout (bindings/python) unless --installed is given, which
uses whatever `import libldm` finds (a pip-installed copy)."""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv):
    if "--installed" not in argv:
        sys.path.insert(0, os.path.dirname(HERE))
    sys.path.insert(0, HERE)
    suite = unittest.TestLoader().discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    result = unittest.TextTestRunner(verbosity=2 if "-v" in argv else 1, stream=sys.stdout).run(suite)
    for test, reason in result.skipped:
        print("SKIPPED: %s: %s" % (test.id(), reason))
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped - len(result.expectedFailures)
    print("python: %d passed, %d failed%s" % (passed, failed, ", %d skipped" % skipped if skipped else ""))
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
