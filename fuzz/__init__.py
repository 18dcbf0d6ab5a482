"""gearproto.fuzz: fuzz-testing for Gearman servers (and for gearproto itself).

The command line (``gearproto fuzz``) is the usual way in; see ``docs/fuzzing.md``.
The pieces are importable for scripted use:

* :class:`Campaign` / :class:`CampaignConfig`: a whole campaign, as the CLI runs it;
* :class:`Case` and its steps (:class:`Connect`, :class:`Send`, :class:`Pause`,
  :class:`Close`), :func:`execute` and :func:`judge`: run one case and get verdicts;
* :func:`load_reproducer` / :func:`replay`: re-run a saved finding.

Only servers on this machine are targeted unless an address is parsed with
``allow_remote=True``.  Never point the fuzzer at a production server.
"""

from .address import Address, AddressError, parse_address
from .campaign import Campaign, CampaignConfig, CampaignResult
from .case import Case, CaseFormatError, Close, Connect, Pause, Send
from .execute import Observation, Timeouts, execute
from .oracles import ServerState, judge, server_state
from .replay import Reproducer, load_reproducer, replay
from .target import Target, TargetError
from .verdict import FindingClass, Verdict

__all__ = [
    "Address",
    "AddressError",
    "Campaign",
    "CampaignConfig",
    "CampaignResult",
    "Case",
    "CaseFormatError",
    "Close",
    "Connect",
    "FindingClass",
    "Observation",
    "Pause",
    "Reproducer",
    "Send",
    "ServerState",
    "Target",
    "TargetError",
    "Timeouts",
    "Verdict",
    "execute",
    "judge",
    "load_reproducer",
    "parse_address",
    "replay",
    "server_state",
]
