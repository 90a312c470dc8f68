"""One model, several callers: the library forbids two calls at once on one model (and on the
handles obtained from it), so the binding lets one call in and makes every other one -- from
another thread, or from a callback of the running call -- raise RuntimeError before it reaches the
library. The hammering runs in a child interpreter: without the guard the heap gets corrupted and
the process dies, which must be a failure of this test, not the end of the test run."""
import os
import subprocess
import sys
import threading
import unittest

import libldm
from support import flat_values

STEPS = 2  # DDIM 2 steps: timesteps 501, 1

HAMMER = r"""
import sys, threading, time
import libldm

def values(x):
    return x.tobytes() if hasattr(x, "tobytes") else bytes(x)

model = libldm.Model.load_builtin("demo", threads=1)
x = libldm.randn(1, 0, shape=(1, 3, 16, 16))
emb = model.conditioner().encode_labels([7])
reference = {
    "generate": values(model.generate(class_label=7, steps=2, seed=3, width=32, height=32)),
    "apply": values(model.apply(x, 500, emb)),
    "unet": values(model.unet()(x, 500, emb)),
}
calls = {
    "generate": lambda: model.generate(class_label=7, steps=2, seed=3, width=32, height=32),
    "apply": lambda: model.apply(x, 500, emb),
    "unet": lambda: model.unet()(x, 500, emb),  # a component shares its model's guard
}
seconds = float(sys.argv[1])
rounds = int(sys.argv[2])
problems = []
counts = {"ok": 0, "busy": 0}
lock = threading.Lock()

def worker(order, barrier):
    barrier.wait()
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        name = order[i % len(order)]
        i += 1
        try:
            got = values(calls[name]())
        except RuntimeError as e:
            with lock:
                counts["busy"] += 1
            time.sleep(0.001)  # let the other thread run instead of spinning on refusals
            if "running" not in str(e):
                problems.append("%s: unexpected message %r" % (name, str(e)))
            continue
        except Exception as e:  # anything else is a bug
            problems.append("%s: %r" % (name, e))
            continue
        with lock:
            counts["ok"] += 1
        if got != reference[name]:
            problems.append("%s: a different result than alone" % name)

for r in range(rounds):
    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=worker, args=(order, barrier))
               for order in (("generate", "apply"), ("apply", "unet", "generate"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # alone again: everything works as before
    for name, call in calls.items():
        if values(call()) != reference[name]:
            problems.append("round %d: %s differs after the threads" % (r, name))
model.close()
print("ok %d busy %d" % (counts["ok"], counts["busy"]))
for p in problems[:20]:
    print("PROBLEM", p)
"""


class ConcurrentCallsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = libldm.Model.load_builtin("demo", seed=0, threads=1)

    @classmethod
    def tearDownClass(cls):
        cls.model.close()

    def generate(self, **kw):
        args = dict(class_label=7, steps=STEPS, seed=3, width=32, height=32)
        args.update(kw)
        return self.model.generate(**args)

    def test_two_threads_hammering_one_model(self):
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(libldm.__file__))),
                   LDM_LIBRARY=libldm.library_path)
        r = subprocess.run([sys.executable, "-c", HAMMER, "1.5", "3"], env=env, capture_output=True, text=True,
                           timeout=300)
        self.assertEqual(r.returncode, 0, "the child died (%d): %s%s" % (r.returncode, r.stdout, r.stderr[-2000:]))
        lines = r.stdout.splitlines()
        self.assertEqual([l for l in lines if l.startswith("PROBLEM")], [])
        ok, busy = (int(v) for v in lines[0].split()[1::2])
        self.assertGreater(ok, 10, r.stdout)
        self.assertGreater(busy, 0, "two threads for 4.5 s and never a call refused: %s" % r.stdout)

    def test_a_call_from_another_thread_while_one_runs(self):
        # Thread A holds a generate() open inside its progress callback while thread B tries the
        # model, a component, the component properties and close(): all refused, none waits.
        inside, done = threading.Event(), threading.Event()
        refused = []
        emb = self.model.conditioner().encode_labels([7])
        x = libldm.randn(1, 0, shape=(1, 3, 16, 16))
        ae = self.model.autoencoder()

        def other():
            inside.wait(60)
            for name, call in (("apply", lambda: self.model.apply(x, 500, emb)),
                               ("generate", lambda: self.model.generate(class_label=1, steps=STEPS)),
                               ("unet", lambda: self.model.unet()(x, 500, emb)),
                               ("decode", lambda: ae.decode(x)),
                               ("factor", lambda: ae.factor),
                               ("describe", self.model.describe),
                               ("set_threads", lambda: self.model.set_threads(1)),
                               ("sampler", lambda: self.model.sampler("ddim", steps=STEPS)),
                               ("set_abort_callback", lambda: self.model.set_abort_callback(None)),
                               ("close", self.model.close)):
                try:
                    call()
                    refused.append((name, "ran"))
                except RuntimeError as e:
                    refused.append((name, "running" in str(e)))
            self.model.interrupt()  # the one call allowed at any time: it stops A
            done.set()

        def progress(step, total):
            inside.set()
            done.wait(60)
        t = threading.Thread(target=other)
        t.start()
        try:
            with self.assertRaises(libldm.Cancelled):
                self.generate(progress=progress)
        finally:
            done.set()
            t.join()
        self.assertEqual(refused, [(name, True) for name, _ in refused])
        self.assertEqual(len(refused), 10)
        self.assertFalse(self.model.closed)
        # and everything works again afterwards
        self.assertEqual(flat_values(self.generate()), flat_values(self.generate()))

    def test_a_call_from_a_callback_of_the_running_call(self):
        x = libldm.randn(1, 0, shape=(1, 3, 16, 16))
        emb = self.model.conditioner().encode_labels([7])
        reentrant = {
            "apply": lambda: self.model.apply(x, 500, emb),
            "generate": lambda: self.model.generate(class_label=1, steps=STEPS),
            "unet": lambda: self.model.unet()(x, 500, emb),
            "describe": self.model.describe,
            "set_threads": lambda: self.model.set_threads(1),
            "conditioner": lambda: self.model.conditioner().encode_labels([1]),
        }
        for name, call in reentrant.items():
            with self.subTest(name, via="progress"):
                with self.assertRaises(RuntimeError) as cm:
                    self.generate(progress=lambda step, total: call())
                self.assertIn("running", str(cm.exception))
            with self.subTest(name, via="abort callback"):
                self.model.set_abort_callback(lambda: call())
                try:
                    with self.assertRaises(RuntimeError) as cm:
                        self.model.apply(x, 500, emb)
                    self.assertIn("running", str(cm.exception))
                finally:
                    self.model.set_abort_callback(None)
        self.assertEqual(flat_values(self.generate()), flat_values(self.generate()))

    def test_one_sampler_two_threads(self):
        # a sampler (and a tokenizer) is one handle too: its calls do not overlap either
        with self.model.sampler("ddim", steps=STEPS, seed=1) as s:
            s.begin(libldm.randn(1, 0, shape=(1, 3, 16, 16)))
            with s._guard:  # as if another thread were inside a call on it
                for call in (lambda: s.next(), lambda: s.current, lambda: s.give([0.0]), s.close):
                    with self.assertRaises(RuntimeError):
                        call()
            self.assertEqual(s.total_evaluations, STEPS)


if __name__ == "__main__":
    unittest.main()
