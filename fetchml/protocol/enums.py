"""Wire values. Never renumber: only append."""

from enum import IntEnum


class Opcode(IntEnum):
    QUEUE_JOB = 0x01
    STATUS = 0x02
    CANCEL_JOB = 0x03
    PRUNE = 0x04
    LOG_METRIC = 0x0A
    GET_EXPERIMENT = 0x0B
    LOG_METRICS = 0x0C
    CREATE_EXPERIMENT = 0x0D
    LIST_EXPERIMENTS = 0x0E
    QUERY_METRICS = 0x0F
    WATCH_METRICS = 0x10
    CLAIM_JOB = 0x11
    UPDATE_JOB = 0x12
    WHOAMI = 0x13
    UPDATE_RUN = 0x14
    LOG_METRICS_AT = 0x15
    QUEUE_JOB_SPEC = 0x16
    LIST_RUNS = 0x17
    PRUNE_PREVIEW = 0x18


RESERVED_OPCODES = frozenset(range(0x05, 0x0A))


class PacketType(IntEnum):
    SUCCESS = 0x00
    ERROR = 0x01
    PROGRESS = 0x02
    STATUS = 0x03
    DATA = 0x04
    LOG = 0x05


class ErrorCode(IntEnum):
    UNKNOWN_ERROR = 0x00
    INVALID_REQUEST = 0x01
    AUTHENTICATION_FAILED = 0x02
    PERMISSION_DENIED = 0x03
    RESOURCE_NOT_FOUND = 0x04
    RESOURCE_ALREADY_EXISTS = 0x05
    SERVER_OVERLOADED = 0x10
    DATABASE_ERROR = 0x11
    NETWORK_ERROR = 0x12
    STORAGE_ERROR = 0x13
    TIMEOUT = 0x14
    JOB_NOT_FOUND = 0x20
    JOB_ALREADY_RUNNING = 0x21
    JOB_FAILED_TO_START = 0x22
    JOB_EXECUTION_FAILED = 0x23
    JOB_CANCELLED = 0x24
    OUT_OF_MEMORY = 0x30
    DISK_FULL = 0x31
    INVALID_CONFIGURATION = 0x32
    SERVICE_UNAVAILABLE = 0x33


class JobStatus(IntEnum):
    """Job states; UPDATE_JOB accepts RUNNING, COMPLETED and FAILED on the wire."""

    QUEUED = 0
    RUNNING = 1
    COMPLETED = 2
    FAILED = 3
    CANCELLED = 4


UPDATABLE_JOB_STATUSES = frozenset({JobStatus.RUNNING, JobStatus.COMPLETED, JobStatus.FAILED})


class PruneType(IntEnum):
    KEEP_NEWEST = 0
    OLDER_THAN_DAYS = 1


class LogLevel(IntEnum):
    DEBUG = 0
    INFO = 1
    WARNING = 2
    ERROR = 3
