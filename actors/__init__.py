"""Baton's actor core: pure trio, no network I/O.

``open_baton(config, providers)`` runs the actor system (supervisor, pool, one health actor per
provider, router, one session per stream) over any ``Provider`` implementations.
"""

from ._attempt import AttemptStatistics as AttemptStatistics
from ._config import BatonConfig as BatonConfig
from ._config import ClientConfig as ClientConfig
from ._config import HealthConfig as HealthConfig
from ._config import ProviderConfig as ProviderConfig
from ._config import RouteConfig as RouteConfig
from ._config import ServerConfig as ServerConfig
from ._config import Target as Target
from ._config import config_from_dict as config_from_dict
from ._errors import BatonError as BatonError
from ._errors import ConfigError as ConfigError
from ._errors import Failure as Failure
from ._errors import FailureKind as FailureKind
from ._errors import RequestError as RequestError
from ._errors import UpstreamError as UpstreamError
from ._errors import clip as clip
from ._messages import ClientEvent as ClientEvent
from ._messages import Delta as Delta
from ._messages import Done as Done
from ._messages import Failover as Failover
from ._messages import Finish as Finish
from ._messages import Malformed as Malformed
from ._messages import Message as Message
from ._messages import Started as Started
from ._messages import StreamError as StreamError
from ._messages import TextDelta as TextDelta
from ._messages import UpstreamEvent as UpstreamEvent
from ._messages import UpstreamRequest as UpstreamRequest
from ._messages import Usage as Usage
from ._messages import UsageReport as UsageReport
from ._messages import is_terminal as is_terminal
from ._pool import ProviderPoolStatistics as ProviderPoolStatistics
from ._provider import ProbeKind as ProbeKind
from ._provider import Provider as Provider
from ._request import parse_messages as parse_messages
from ._request import parse_params as parse_params
from ._router import RouteRetryStatistics as RouteRetryStatistics
from ._router import RouterStatistics as RouterStatistics
from ._session import StreamStatistics as StreamStatistics
from ._system import Baton as Baton
from ._system import BatonStatistics as BatonStatistics
from ._system import DrainStatistics as DrainStatistics
from ._system import ProviderStatistics as ProviderStatistics
from ._system import StreamHandle as StreamHandle
from ._system import open_baton as open_baton
from ._vocab import AttemptEnd as AttemptEnd
from ._vocab import ContinuationForm as ContinuationForm
from ._vocab import ErrorCode as ErrorCode
from ._vocab import ProbeVerdict as ProbeVerdict
from ._vocab import RefusalReason as RefusalReason
from ._vocab import ReportOutcome as ReportOutcome
from ._vocab import RequestErrorCode as RequestErrorCode
from ._vocab import StreamEnd as StreamEnd
from ._vocab import StreamErrorCode as StreamErrorCode
from ._vocab import Traffic as Traffic
from .policy._health_view import HealthSnapshot as HealthSnapshot
from .policy._health_view import HealthTransition as HealthTransition
