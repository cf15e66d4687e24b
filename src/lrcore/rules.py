"""The table of update rules: the one place that describes each rule lrcore implements.

Every other layer derives from `RULES`: the kernels' argument checks and the by-name
hyperparameter packing of both backends (lrcore.backend, lrcore._core, lrcore.reference),
the test registry (lrcore.registry: the cross-product of the options that select loop
variants), the benchmarks, the optimizer classes, lrcore.torch, the update task and the CLI.
The arithmetic itself lives in include/lrcore.h (the C loop, with the same math as a
comment above it) and in lrcore/reference.py (the numpy twin); `Rule.math` below is the
third written form and the three agree operation for operation.

Adding a rule: a `Rule` row here, then the places listed in README.md, "Development".
"""
import math
import numbers
from dataclasses import dataclass, field

__all__ = ["Range", "Hyper", "State", "Option", "Rule", "Preset", "RULES", "PRESETS",
           "NONNEG", "UNIT_OPEN", "UNIT_CLOSED", "ANY_REAL", "STEP_MAX", "rule", "preset",
           "check_real", "check_step"]

STEP_MAX = 2 ** 53   # beta**step and step * x are exact to form in double up to here


# ---------------------------------------------------------------------------
# Ranges: one vocabulary and one message style for every layer
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Range:
    """Allowed values of a real hyperparameter; `text` completes "<name> must be ...".

    Every value must be finite; `lo`/`hi` bound it, `hi_open` excludes `hi`."""
    lo: float = -math.inf
    hi: float = math.inf
    hi_open: bool = False
    text: str = "a finite number"

    def contains(self, v):
        return (math.isfinite(v) and v >= self.lo
                and (v < self.hi if self.hi_open else v <= self.hi))

    def message(self, where, name, v):
        return f"{where}: {name} must be {self.text}, got {v if isinstance(v, str) else repr(v)}"


NONNEG = Range(0.0, math.inf, False, "a finite number >= 0")
UNIT_OPEN = Range(0.0, 1.0, True, "in [0, 1)")
UNIT_CLOSED = Range(0.0, 1.0, False, "in [0, 1]")
ANY_REAL = Range()


def check_real(where, name, x, rng):
    """x as a float inside `rng`, else TypeError/ValueError naming `name` (never
    OverflowError: an int too large for a double is out of range like any other)."""
    if type(x) is not float:
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise TypeError(f"{where}: {name} must be a real number, got {type(x).__name__}")
        try:
            x = float(x)
        except OverflowError:   # an int beyond any double: out of range like any other
            raise ValueError(rng.message(where, name, f"an integer of {len(str(abs(x)))} digits")
                             ) from None
    if not rng.contains(x):
        raise ValueError(rng.message(where, name, x))
    return x


def check_step(where, x, name="step"):
    """A step number: an integer in [1, 2**53] (1 for the first step)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an integer, got {type(x).__name__}")
    v = int(x)
    if v < 1:
        raise ValueError(f"{where}: {name} must be >= 1 (1 for the first step), got {v}")
    if v > STEP_MAX:
        raise ValueError(f"{where}: {name} must be <= 2**53, got {v}")
    return v


# ---------------------------------------------------------------------------
# The row types
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Hyper:
    """One field of the rule's C hyperparameter struct (lrcore_<rule>_hp), in struct order.

    ctype: 'double', 'int64' (the step) or 'int' (a flag). `default` None means required.
    `variants`: values that select each loop variant (empty: the field does not select
    one); the test registry runs the cross-product of every rule's `variants`.
    `public`: False for a field the caller of a kernel does not pass (grad_scale: set by
    gradient clipping). A default of None on a flag or on mu_product: derived from the
    other fields unless given (lrcore._validate.DERIVED: init_buffer = step == 1)."""
    name: str
    ctype: str = "double"
    default: object = None
    range: Range = None
    variants: tuple = ()
    public: bool = True
    doc: str = ""


@dataclass(frozen=True)
class State:
    """One state buffer, in kernel-argument order.

    init: its initial value, a number or the name of an Option holding it.
    when: None (always present), the name of an Option that must be true, or the name
    of a hyperparameter that must be > 0 (momentum).
    int8: whether the buffer may be kept in 8 bits (state_dtype="int8", lrcore.quantization)
    and on which map: "signed" (first-moment-like values), "unsigned" (second-moment-like,
    >= 0), or None (stays float32; a rule with such a state in use refuses 8-bit state).
    Why each rule's states are or are not 8-bit: README, "8-bit optimizer state"."""
    name: str
    torch_name: str
    init: object = 0.0
    when: str = None
    int8: str = None


@dataclass(frozen=True)
class Option:
    """An optimizer-level choice that is not a kernel hyperparameter: it selects state
    buffers (amsgrad, centered) or their initial value (initial_accumulator_value)."""
    name: str
    default: object
    range: Range = None     # None: a boolean
    variants: tuple = ()
    doc: str = ""


@dataclass(frozen=True)
class Rule:
    """One update rule. `math` is the update as the kernels compute it (C order)."""
    name: str
    kind: int                       # position in LRCORE_RULES (lrcore.h): the C kind id
    hypers: tuple                   # Hyper, in the C struct's order
    states: tuple                   # State, in kernel-argument order
    options: tuple = ()             # Option
    torch_class: str = None         # name in torch.optim; None: torch has no such rule
    torch_hypers: dict = field(default_factory=dict)   # lrcore name -> torch argument name
    cli_lr: float = 1e-3            # `lrcore train`'s default --lr
    math: str = ""
    scalar_states: tuple = ()       # torch per-param scalars other than `step`

    def hyper(self, name):
        for h in self.hypers:
            if h.name == name:
                return h
        raise KeyError(f"{self.name} has no hyperparameter {name!r}")

    @property
    def public_hypers(self):
        """The keyword arguments of the kernel besides lr/step order: every public field."""
        return tuple(h for h in self.hypers if h.public)

    @property
    def variant_hypers(self):
        return tuple(h for h in self.hypers if h.variants)

    def state_present(self, state, values):
        """Whether `state` exists for these hyperparameter/option values (a dict)."""
        if state.when is None:
            return True
        if any(o.name == state.when for o in self.options):
            return bool(values.get(state.when, self._option(state.when).default))
        v = values.get(state.when, self.hyper(state.when).default)
        return v is not None and v > 0

    def _option(self, name):
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(name)

    def present_states(self, values):
        return tuple(s for s in self.states if self.state_present(s, values))

    def initial_value(self, state, values):
        if isinstance(state.init, str):
            return float(values.get(state.init, self._option(state.init).default))
        return float(state.init)

    def bytes_per_element(self, itemsize, values=None, first_step=False):
        """Bytes one step moves per element: param, grad and each present state read;
        param and each present state written. (SGD's buffer is written, not read, on
        its first step.)"""
        n = len(self.present_states(values or {}))
        reads, writes = 2 + n, 1 + n
        if first_step and self.name == "sgd" and n:
            reads -= 1
        return (reads + writes) * itemsize


@dataclass(frozen=True)
class Preset:
    """An optimizer as users name it: a rule with some fields fixed and other defaults
    (AdamW = adam with decoupled weight decay and weight_decay=1e-2)."""
    name: str
    rule: str
    fixed: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)
    torch_class: str = None
    cli_lr: float = None


# ---------------------------------------------------------------------------
# Shared fields
# ---------------------------------------------------------------------------

def _lr(default=None):
    return Hyper("lr", default=default, range=NONNEG, doc="learning rate")


_GRAD_SCALE = Hyper("grad_scale", default=1.0, range=ANY_REAL, public=False,
                    doc="g = grad * grad_scale (clipping; negated for maximize)")
_STEP = Hyper("step", ctype="int64", range=None,
              doc="number of this step, 1 for the first (bias corrections, schedules)")
_MAXIMIZE = Hyper("maximize", ctype="int", default=False, variants=(False, True),
                  doc="ascend instead of descend (grad_scale is negated)")


def _wd(default=0.0, doc="L2 penalty: g = g + weight_decay * param"):
    return Hyper("weight_decay", default=default, range=NONNEG, variants=(0.0, 0.01), doc=doc)


def _decoupled(doc="AdamW-style: param = param * (1 - lr * weight_decay) instead of L2"):
    return Hyper("decoupled_weight_decay", ctype="int", default=False, variants=(False, True),
                 doc=doc)


def _eps(default):
    return Hyper("eps", default=default, range=NONNEG, doc="added to the denominator")


# beta1 = 0.9 makes the lerp weight 1 - beta1 < 0.5 (torch.lerp's first branch), 0.3 the other
_BETA1 = Hyper("beta1", default=0.9, range=UNIT_OPEN, variants=(0.9, 0.3),
               doc="first-moment decay; exp_avg = lerp(exp_avg, g, 1 - beta1)")
_BETA2 = Hyper("beta2", default=0.999, range=UNIT_OPEN, doc="second-moment decay")

_LERP = ("lerp(a, b, w) is torch.lerp with a scalar weight: a + w*(b - a) if |w| < 0.5,\n"
         "else b - (b - a)*(1 - w), the branch chosen on w rounded to the buffers' dtype.")


# ---------------------------------------------------------------------------
# The rules (kind ids are the C enum's; never renumber a released one)
# ---------------------------------------------------------------------------

RULES = {r.name: r for r in (
    Rule("sgd", 0,
         hypers=(_lr(), Hyper("momentum", default=0.0, range=NONNEG, variants=(0.0, 0.9)),
                 Hyper("dampening", default=0.0, range=UNIT_CLOSED, variants=(0.0, 0.1)),
                 _wd(), _GRAD_SCALE, _STEP,
                 Hyper("nesterov", ctype="int", default=False, variants=(False, True),
                       doc="Nesterov momentum (needs momentum > 0, dampening = 0)"),
                 _MAXIMIZE,
                 Hyper("init_buffer", ctype="int", default=None, variants=(True, False),
                       doc="nonzero: the momentum buffer starts as g (torch's first step); "
                           "kernels.sgd sets it to step == 1 unless passed")),
         states=(State("momentum_buffer", "momentum_buffer", 0.0, when="momentum", int8="signed"),),
         torch_class="SGD", cli_lr=0.1,
         math="""\
g = s * grad                                  s = grad_scale, negated if maximize
g = g + weight_decay * param                  if weight_decay != 0
if momentum != 0:
    buf = g                                   if init_buffer (torch's first step)
    buf = momentum * buf + (1 - dampening) * g   otherwise
    g = g + momentum * buf                    if nesterov
    g = buf                                   otherwise
param = param + (-lr) * g"""),

    Rule("adam", 1,
         hypers=(_lr(), _BETA1, _BETA2, _eps(1e-8), _wd(), _GRAD_SCALE, _STEP, _decoupled(),
                 _MAXIMIZE),
         states=(State("exp_avg", "exp_avg", int8="signed"),
                 State("exp_avg_sq", "exp_avg_sq", int8="unsigned"),
                 State("max_exp_avg_sq", "max_exp_avg_sq", 0.0, when="amsgrad", int8="unsigned")),
         options=(Option("amsgrad", False, variants=(False, True),
                         doc="keep the running maximum of exp_avg_sq (AMSGrad)"),),
         torch_class="Adam", torch_hypers={"beta1": "betas[0]", "beta2": "betas[1]"},
         cli_lr=1e-3,
         math="""\
g = s * grad
param = param * (1 - lr * weight_decay)       if decoupled_weight_decay (AdamW)
g = g + weight_decay * param                  if weight_decay != 0, not decoupled
exp_avg = lerp(exp_avg, g, 1 - beta1)
exp_avg_sq = exp_avg_sq * beta2 + ((1 - beta2) * g) * g
v = max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq)   if amsgrad (torch.maximum: NaN wins)
v = exp_avg_sq                                          otherwise
denom = sqrt(v) / sqrt(1 - beta2**step) + eps
param = param + ((-lr / (1 - beta1**step)) * exp_avg) / denom
""" + _LERP),

    Rule("adagrad", 2,
         hypers=(_lr(), Hyper("lr_decay", default=0.0, range=NONNEG, variants=(0.0, 0.1)),
                 _wd(), _eps(1e-10), _GRAD_SCALE, _STEP, _MAXIMIZE),
         states=(State("state_sum", "sum", "initial_accumulator_value"),),
         options=(Option("initial_accumulator_value", 0.0, NONNEG, variants=(0.0, 0.1),
                         doc="initial value of state_sum"),),
         torch_class="Adagrad", cli_lr=1e-2,
         math="""\
g = s * grad
g = g + weight_decay * param                  if weight_decay != 0
clr = lr / (1 + (step - 1) * lr_decay)
state_sum = state_sum + g * g
param = param + ((-clr) * g) / (sqrt(state_sum) + eps)"""),

    Rule("rmsprop", 3,
         hypers=(_lr(), Hyper("alpha", default=0.99, range=UNIT_OPEN, variants=(0.99, 0.3),
                              doc="square_avg decay; 0.3 takes torch.lerp's other branch"),
                 _eps(1e-8), _wd(), Hyper("momentum", default=0.0, range=NONNEG, variants=(0.0, 0.9)),
                 _GRAD_SCALE, _STEP, _MAXIMIZE),
         states=(State("square_avg", "square_avg", int8="unsigned"),
                 State("momentum_buffer", "momentum_buffer", 0.0, when="momentum", int8="signed"),
                 State("grad_avg", "grad_avg", 0.0, when="centered")),
         options=(Option("centered", False, variants=(False, True),
                         doc="normalise by the variance estimate (keeps grad_avg)"),),
         torch_class="RMSprop", cli_lr=1e-3,
         math="""\
g = s * grad
g = g + weight_decay * param                  if weight_decay != 0
square_avg = square_avg * alpha + ((1 - alpha) * g) * g
if centered:
    grad_avg = lerp(grad_avg, g, 1 - alpha)
    avg = sqrt(square_avg - grad_avg * grad_avg) + eps
else:
    avg = sqrt(square_avg) + eps
if momentum > 0:
    buf = buf * momentum + g / avg
    param = param + (-lr) * buf
else:
    param = param + ((-lr) * g) / avg
""" + _LERP),

    Rule("adadelta", 4,
         hypers=(_lr(1.0), Hyper("rho", default=0.9, range=UNIT_OPEN),
                 _eps(1e-6), _wd(), _GRAD_SCALE, _STEP, _MAXIMIZE),
         states=(State("square_avg", "square_avg"), State("acc_delta", "acc_delta")),
         torch_class="Adadelta", cli_lr=1.0,
         math="""\
g = s * grad
g = g + weight_decay * param                  if weight_decay != 0
square_avg = square_avg * rho + ((1 - rho) * g) * g
delta = (sqrt(acc_delta + eps) / sqrt(square_avg + eps)) * g
acc_delta = acc_delta * rho + ((1 - rho) * delta) * delta
param = param + (-lr) * delta"""),

    Rule("adamax", 5,
         hypers=(_lr(), _BETA1, _BETA2, _eps(1e-8), _wd(), _GRAD_SCALE, _STEP, _MAXIMIZE),
         states=(State("exp_avg", "exp_avg"), State("exp_inf", "exp_inf")),
         torch_class="Adamax", torch_hypers={"beta1": "betas[0]", "beta2": "betas[1]"},
         cli_lr=2e-3,
         math="""\
g = s * grad
g = g + weight_decay * param                  if weight_decay != 0
exp_avg = lerp(exp_avg, g, 1 - beta1)
exp_inf = max(exp_inf * beta2, |g| + eps)     (torch.maximum: NaN wins)
param = param + ((-lr / (1 - beta1**step)) * exp_avg) / exp_inf
""" + _LERP),

    Rule("nadam", 6,
         hypers=(_lr(), _BETA1, _BETA2, _eps(1e-8), _wd(),
                 Hyper("momentum_decay", default=4e-3, range=NONNEG,
                       doc="psi in mu_t = beta1 * (1 - 0.5 * 0.96**(t * psi))"),
                 Hyper("mu_product", default=None, range=NONNEG, public=True,
                       doc="mu_1 * ... * mu_step, this step's mu included: torch's per-param "
                           "scalar state, a float32 running product (mu_product = f32(mu_product"
                           " * f32(mu_t))); kept by the caller, computed when not given"),
                 _GRAD_SCALE, _STEP, _decoupled(), _MAXIMIZE),
         states=(State("exp_avg", "exp_avg", int8="signed"),
                 State("exp_avg_sq", "exp_avg_sq", int8="unsigned")),
         torch_class="NAdam", torch_hypers={"beta1": "betas[0]", "beta2": "betas[1]"},
         cli_lr=2e-3, scalar_states=("mu_product",),
         math="""\
g = s * grad
param = param * (1 - lr * weight_decay)       if decoupled_weight_decay (NAdamW)
g = g + weight_decay * param                  if weight_decay != 0, not decoupled
mu = beta1 * (1 - 0.5 * 0.96**(step * momentum_decay)),  mu_next likewise at step + 1
exp_avg = lerp(exp_avg, g, 1 - beta1)
exp_avg_sq = exp_avg_sq * beta2 + ((1 - beta2) * g) * g
denom = sqrt(exp_avg_sq / (1 - beta2**step)) + eps
param = param + ((-lr * (1 - mu) / (1 - mu_product)) * g) / denom
param = param + ((-lr * mu_next / (1 - mu_product * mu_next)) * exp_avg) / denom
""" + _LERP),

    Rule("radam", 7,
         hypers=(_lr(), _BETA1, _BETA2, _eps(1e-8), _wd(), _GRAD_SCALE, _STEP, _decoupled(),
                 _MAXIMIZE),
         states=(State("exp_avg", "exp_avg", int8="signed"),
                 State("exp_avg_sq", "exp_avg_sq", int8="unsigned")),
         torch_class="RAdam", torch_hypers={"beta1": "betas[0]", "beta2": "betas[1]"},
         cli_lr=1e-3,
         math="""\
g = s * grad
param = param * (1 - lr * weight_decay)       if decoupled_weight_decay
g = g + weight_decay * param                  if weight_decay != 0, not decoupled
exp_avg = lerp(exp_avg, g, 1 - beta1)
exp_avg_sq = exp_avg_sq * beta2 + ((1 - beta2) * g) * g
m = exp_avg / (1 - beta1**step)
rho_inf = 2 / (1 - beta2) - 1;  rho = rho_inf - 2 * step * beta2**step / (1 - beta2**step)
if rho > 5:   (the variance is tractable: step >= 6 for beta2 = 0.999)
    rect = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5
    adaptive = (1 / (sqrt(exp_avg_sq) + eps)) * (1 - beta2**step) ** 0.5
    param = param - ((m * lr) * adaptive) * rect
else:
    param = param - m * lr
""" + _LERP),

    Rule("lion", 8,
         hypers=(_lr(1e-4), Hyper("beta1", default=0.9, range=UNIT_CLOSED,
                                  doc="weight of the momentum in the update's sign"),
                 Hyper("beta2", default=0.99, range=UNIT_CLOSED, doc="momentum decay"),
                 _wd(doc="decoupled: param = param * (1 - lr * weight_decay)"),
                 _GRAD_SCALE, _STEP, _MAXIMIZE),
         states=(State("exp_avg", "exp_avg", int8="signed"),),
         torch_class=None, cli_lr=1e-4,
         math="""\
g = s * grad
param = param * (1 - lr * weight_decay)       (decoupled, as optax and timm)
c = exp_avg * beta1 + (1 - beta1) * g
param = param - lr * sign(c)                  sign(0) = 0, sign(NaN) = NaN
exp_avg = exp_avg * beta2 + (1 - beta2) * g
Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"; timm's order."""),
)}


PRESETS = {p.name: p for p in (
    [Preset(r.name, r.name, torch_class=r.torch_class, cli_lr=r.cli_lr) for r in RULES.values()]
    + [Preset("adamw", "adam", fixed={"decoupled_weight_decay": True},
              defaults={"weight_decay": 1e-2}, torch_class="AdamW", cli_lr=1e-3)]
)}


def _lookup(table, name, what):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(table)}") from None


def rule(name):
    """The row of update rule `name` (ValueError naming the choices otherwise)."""
    return _lookup(RULES, name, "update rule")


def preset(name):
    """The optimizer preset `name` (a rule, or AdamW: Adam with decoupled decay)."""
    return _lookup(PRESETS, name, "optimizer")
