"""Policies: NCP wiring, LTC/CfC cells, perception CNN, baselines, checkpoints."""

# perception, policies, factory, checkpoints (policies/cnn.py, policy.py, factory.py, checkpoint.py)
# and the liquid core (policies/wiring.py, ltc.py, cfc.py, ncps_compat.py)
from policies.cfc import CfC as CfC  # noqa: E402
from policies.checkpoint import load_policy as load_policy  # noqa: E402
from policies.checkpoint import save_checkpoint as save_checkpoint  # noqa: E402
from policies.cnn import PerceptionCNN as PerceptionCNN  # noqa: E402
from policies.factory import POLICY_NAMES as POLICY_NAMES  # noqa: E402
from policies.factory import build_policy as build_policy  # noqa: E402
from policies.ltc import LTC as LTC  # noqa: E402
from policies.ncps_compat import from_ncps  # noqa: E402, F401
from policies.policy import Policy as Policy  # noqa: E402
from policies.wiring import Wiring as Wiring  # noqa: E402
