"""PNG helpers: write, read back, gray reading, errors."""
import os
import tempfile
import unittest
import zlib

import libldm
from support import flat_values, shape_of


class PngTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.tmp.name, "x.png")

    def tearDown(self):
        self.tmp.cleanup()

    def test_round_trip_follows_the_documented_quantisation(self):
        # sample = (uint8)(255 * clamp((x+1)/2, 0, 1)) written, 2*v/255 - 1 read
        values = [[[-1.0, -0.5, 0.0, 0.5], [1.0, 2.0, -3.0, 0.25]]] * 3
        libldm.write_png(self.path, [values], text={"parameters": "seed 1", "Software": "libldm test"})
        with open(self.path, "rb") as f:
            blob = f.read()
        self.assertEqual(blob[:8], b"\x89PNG\r\n\x1a\n")
        self.assertIn(b"tEXtparameters\x00seed 1", blob)
        back = libldm.read_png(self.path)
        self.assertEqual(shape_of(back), (1, 3, 2, 4))
        expected = []
        for x in [v for row in values[0] for v in row] * 3:
            q = int(255 * min(max((x + 1) / 2, 0.0), 1.0))
            expected.append(2 * q / 255 - 1)
        for g, e in zip(flat_values(back), expected):
            self.assertAlmostEqual(g, e, places=6)
        gray = libldm.read_png_gray(self.path, normalize=False)
        self.assertEqual(shape_of(gray), (1, 1, 2, 4))
        self.assertEqual(flat_values(gray)[0], 0.0)  # black stays 0 in luminance
        self.assertEqual(flat_values(libldm.read_png_gray(self.path))[4], 1.0)  # white, normalised

    def test_errors(self):
        with self.assertRaises(libldm.FileError):
            libldm.read_png(os.path.join(self.tmp.name, "missing.png"))
        with open(self.path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + zlib.compress(b"not a png"))
        with self.assertRaises(libldm.FormatError) as cm:
            libldm.read_png(self.path)
        self.assertIn(self.path, str(cm.exception))
        with self.assertRaises(libldm.InvalidArgumentError):
            libldm.write_png(self.path, [[[0.0]]] * 2)  # two channels


if __name__ == "__main__":
    unittest.main()
