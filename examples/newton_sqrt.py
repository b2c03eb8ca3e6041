"""Newton's method for sqrt(a) as a cg.while_loop, and its derivative by forward mode.

The loop x <- (x + a / x) / 2 runs until |x^2 - a| < tol: its trip count depends on the data,
so it cannot be unrolled when the graph is built. Forward mode differentiates through the loop
(a while_loop over values and tangents) and gives d sqrt(a) / da = 1 / (2 sqrt(a)), the closed
form, without knowing how many trips ran; reverse mode needs a bound on the trips (max_trips).

Run: python examples/newton_sqrt.py
"""

import numpy as np

import cgraph as cg


def solver(max_trips: int | None = None, tol: float = 1e-12) -> cg.Graph:
    g = cg.Graph("newton-sqrt")
    a = g.input("a", (None,))

    def body(c):
        x, trips = c
        return 0.5 * (x + a / x), trips + 1

    x, trips = cg.while_loop(lambda c: cg.max(cg.abs(c[0] * c[0] - a)) > tol, body,
                             (a * 0.5 + 0.5, g.constant("trips", 0)), max_trips=max_trips)
    g.output("sqrt", x)
    g.output("trips", trips)
    return g


def main() -> dict[str, float]:
    a = np.array([0.25, 2.0, 9.0, 1e4])
    g = solver()
    out = cg.Evaluator(g).run({"a": a})
    _, tangents = cg.ForwardMode(g, ["sqrt"], ["a"]).jvp({"a": a}, {"a": np.ones_like(a)})
    closed = 1 / (2 * np.sqrt(a))
    print(f"{int(out['trips'])} Newton steps")
    print("      a       sqrt(a)  (numpy)         d/da (forward mode)   1/(2 sqrt a)")
    for ai, si, di, ci in zip(a, out["sqrt"], tangents["sqrt"], closed, strict=True):
        print(f"{ai:9.2f}  {si:12.8f}  ({np.sqrt(ai):12.8f})  {di:18.12f}  {ci:14.12f}")
    err = float(np.max(np.abs(tangents["sqrt"] - closed) / closed))
    print(f"largest relative error of the derivative: {err:.1e}")
    bounded = solver(max_trips=30)
    bounded.output("total", cg.sum(bounded.outputs["sqrt"]))
    _, grads = cg.ReverseMode(bounded, "total", ["a"]).grad({"a": a})
    rerr = float(np.max(np.abs(grads["a"] - closed) / closed))
    print(f"reverse mode with max_trips=30: largest relative error {rerr:.1e}")
    return {"forward": err, "reverse": rerr}


if __name__ == "__main__":
    main()
