"""Baton's network and process edges."""

from ._auth import TOKEN_TTL as TOKEN_TTL
from ._auth import ClientAuth as ClientAuth
from ._auth import ClientStatistics as ClientStatistics
from ._auth import Refused as Refused
from ._auth import client_auth as client_auth
from ._faults import FAULTS as FAULTS
from ._faults import Fault as Fault
from ._faults import FaultInjector as FaultInjector
from ._http import LISTEN_BACKLOG as LISTEN_BACKLOG
from ._http import build_app as build_app
from ._http import serve_http as serve_http
from ._limits import ConnectionLimiter as ConnectionLimiter
from ._limits import ConnectionLimits as ConnectionLimits
from ._limits import ConnectionStatistics as ConnectionStatistics
from ._limits import ConnectionVerdict as ConnectionVerdict
from ._limits import connection_limits as connection_limits
from ._metrics import MetricsEndpoint as MetricsEndpoint
from ._serve import JSONFormatter as JSONFormatter
from ._serve import build_providers as build_providers
from ._serve import configure_logging as configure_logging
from ._serve import load_config as load_config
from ._serve import run_baton as run_baton
from ._ws import ClientFrameError as ClientFrameError
from ._ws import decode_client_message as decode_client_message
from ._ws import encode_event as encode_event
from ._ws import serve_ws as serve_ws
