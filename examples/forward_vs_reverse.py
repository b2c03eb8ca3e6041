"""The lecture's two-output graph, y1 = sin(w1 x + w0) and y2 = cos(w1 x + w0), in both modes.

Forward mode seeds the tangent of w1 and carries values and tangents together, leaves to
outputs: one sweep gives d/dw1 of every output. Reverse mode evaluates forward, then sends
adjoints back from y2: one sweep gives dy2 with respect to every leaf. Each figure is printed
beside the lecture's closed form.

Run: python examples/forward_vs_reverse.py
"""

import numpy as np

import cgraph as cg

w0, w1, x = 0.3, -1.2, 0.7

g = cg.Graph("lecture-sin-cos")
a1 = g.input("w0", shape=())
a2 = g.input("w1", shape=())
a3 = g.input("x", shape=())
a4 = a2 * a3  # a4 = a2 * a3
a5 = a4 + a1  # a5 = a4 + a1
g.output("a4", a4)
g.output("a5", a5)
g.output("y1", cg.sin(a5))  # a6
g.output("y2", cg.cos(a5))  # a7
feeds = {"w0": w0, "w1": w1, "x": x}

values = cg.Evaluator(g).run(feeds)
print(f"values at w0={w0}, w1={w1}, x={x}:")
for name in ("a4", "a5", "y1", "y2"):
    print(f"  {name:3s} = {float(values[name]): .12f}")

fm = cg.ForwardMode(g, of=["a4", "a5", "y1", "y2"], wrt=["w0", "w1", "x"])
_, tan = fm.jvp(feeds, {"w1": 1.0})  # a2dot = 1, the others 0
u = w1 * x + w0
print("\nforward mode, tangents for d/dw1 (one sweep):")
print(f"  a4dot = a2dot*a3 + a2*a3dot = {float(tan['a4']): .12f}   (closed form x = {x: .12f})")
print(f"  a5dot = a4dot + a1dot       = {float(tan['a5']): .12f}")
print(f"  dy1/dw1 = cos(a5) a5dot     = {float(tan['y1']): .12f}   (x cos(w1 x + w0)  = {x * np.cos(u): .12f})")
print(f"  dy2/dw1 = -sin(a5) a5dot    = {float(tan['y2']): .12f}   (-x sin(w1 x + w0) = {-x * np.sin(u): .12f})")

rm = cg.ReverseMode(g, of="y2", wrt=["w0", "w1", "x"])
value, adj = rm.grad(feeds)  # a7bar = 1, a6bar = 0
print("\nreverse mode, adjoints of y2 (one backward sweep):")
print(f"  dy2/dw0 = a1bar = {float(adj['w0']): .12f}   (-sin(w1 x + w0)    = {-np.sin(u): .12f})")
print(f"  dy2/dw1 = a2bar = {float(adj['w1']): .12f}   (-x sin(w1 x + w0)  = {-x * np.sin(u): .12f})")
print(f"  dy2/dx  = a3bar = {float(adj['x']): .12f}   (-w1 sin(w1 x + w0) = {-w1 * np.sin(u): .12f})")
print(f"\npeak intermediate bytes: forward {fm.stats.peak_bytes}, reverse {rm.stats.peak_bytes}")
