"""Draw the lecture's sin/cos graph with the numbers of both sweeps, as the lecture draws them.

y1 = sin(w1 x + w0), y2 = cos(w1 x + w0) at w0=0.3, w1=-1.2, x=0.7. Reverse mode from y2 writes
each node's adjoint (a5bar = -sin(a5), a6bar = 0 since y1 does not feed y2); forward mode
seeded at w1 writes each node's tangent (a5dot = x). Writes docs/sin_cos_reverse.svg and
docs/sin_cos_forward.svg (with Graphviz's `dot`), and prints the adjoints beside their closed
forms.

Run: python examples/render_lecture_graph.py
"""

from pathlib import Path

import numpy as np

import cgraph as cg

w0, w1, x = 0.3, -1.2, 0.7
g = cg.Graph("lecture: y1 = sin(w1 x + w0), y2 = cos(w1 x + w0)")
a1 = g.input("w0", shape=())
a2 = g.input("w1", shape=())
a3 = g.input("x", shape=())
a4 = a2 * a3
a5 = a4 + a1
g.output("y1", cg.sin(a5))  # a6
g.output("y2", cg.cos(a5))  # a7
feeds = {"w0": w0, "w1": w1, "x": x}

docs = Path(__file__).resolve().parent.parent / "docs"
docs.mkdir(exist_ok=True)
print("wrote", cg.render(g, docs / "sin_cos_reverse.svg", feeds=feeds, mode="reverse", of="y2", rankdir="BT"))
print("wrote", cg.render(g, docs / "sin_cos_forward.svg", feeds=feeds, mode="forward", wrt=["w1"], rankdir="BT"))

t = cg.trace(g, feeds, mode="reverse", of="y2")
u = w1 * x + w0
print(f"a5bar = {float(t.adjoints[a5.name]): .6f}   (-sin(w1 x + w0)    = {-np.sin(u): .6f})")
print(f"a2bar = {float(t.adjoints['w1']): .6f}   (-x sin(w1 x + w0)  = {-x * np.sin(u): .6f})")
print(f"a3bar = {float(t.adjoints['x']): .6f}   (-w1 sin(w1 x + w0) = {-w1 * np.sin(u): .6f})")
