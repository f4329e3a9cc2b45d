"""The monitor's own commands, declared as QEMU declares them (``qapi/control.json``,
``qapi/introspect.json``, ``human-monitor-command`` of ``qapi/misc.json``), and the names
QEMU 7.2's introspection gives the types we serve."""

from __future__ import annotations

from typing import Any

CONTROL_QAPI: list[dict[str, Any]] = [
    {"enum": "QMPCapability", "data": ["oob"]},
    {"command": "qmp_capabilities", "data": {"*enable": ["QMPCapability"]}},
    {"struct": "VersionTriple", "data": {"major": "int", "minor": "int", "micro": "int"}},
    {"struct": "VersionInfo", "data": {"qemu": "VersionTriple", "package": "str"}},
    {"command": "query-version", "returns": "VersionInfo"},
    {"struct": "CommandInfo", "data": {"name": "str"}},
    {"command": "query-commands", "returns": ["CommandInfo"]},
    {
        "enum": "SchemaMetaType",
        "data": ["builtin", "enum", "array", "object", "alternate", "command", "event"],
    },
    {
        "enum": "JSONType",
        "data": ["string", "number", "int", "boolean", "null", "object", "array", "value"],
    },
    {"struct": "SchemaInfoBuiltin", "data": {"json-type": "JSONType"}},
    {"struct": "SchemaInfoEnumMember", "data": {"name": "str", "*features": ["str"]}},
    {
        "struct": "SchemaInfoEnum",
        "data": {
            "members": ["SchemaInfoEnumMember"],
            "values": {"type": ["str"], "features": ["deprecated"]},
        },
    },
    {"struct": "SchemaInfoArray", "data": {"element-type": "str"}},
    {
        "struct": "SchemaInfoObjectMember",
        "data": {"name": "str", "type": "str", "*default": "any", "*features": ["str"]},
    },
    {"struct": "SchemaInfoObjectVariant", "data": {"case": "str", "type": "str"}},
    {
        "struct": "SchemaInfoObject",
        "data": {
            "members": ["SchemaInfoObjectMember"],
            "*tag": "str",
            "*variants": ["SchemaInfoObjectVariant"],
        },
    },
    {"struct": "SchemaInfoAlternateMember", "data": {"type": "str"}},
    {"struct": "SchemaInfoAlternate", "data": {"members": ["SchemaInfoAlternateMember"]}},
    {
        "struct": "SchemaInfoCommand",
        "data": {"arg-type": "str", "ret-type": "str", "*allow-oob": "bool"},
    },
    {"struct": "SchemaInfoEvent", "data": {"arg-type": "str"}},
    {
        "union": "SchemaInfo",
        "base": {"name": "str", "meta-type": "SchemaMetaType", "*features": ["str"]},
        "discriminator": "meta-type",
        "data": {
            "builtin": "SchemaInfoBuiltin",
            "enum": "SchemaInfoEnum",
            "array": "SchemaInfoArray",
            "object": "SchemaInfoObject",
            "alternate": "SchemaInfoAlternate",
            "command": "SchemaInfoCommand",
            "event": "SchemaInfoEvent",
        },
    },
    {"command": "query-qmp-schema", "returns": ["SchemaInfo"]},
    {
        "command": "human-monitor-command",
        "data": {"command-line": "str", "*cpu-index": "int"},
        "returns": "str",
        "features": ["savevm-monitor-nodes"],
    },
]

#: Commands in the order QEMU 7.2 lists them in its schema (and so in introspection).
SCHEMA_COMMAND_ORDER = [
    "qmp_capabilities",
    "query-version",
    "query-commands",
    "query-qmp-schema",
    "human-monitor-command",
    "query-stats",
    "query-stats-schemas",
]

#: Commands in the order QEMU 7.2's ``query-commands`` returns them.
QUERY_COMMANDS_ORDER = [
    "query-stats-schemas",
    "query-stats",
    "human-monitor-command",
    "query-qmp-schema",
    "query-commands",
    "query-version",
    "qmp_capabilities",
]

#: (our type, QEMU 7.2's introspection name), in QEMU 7.2's emission order.
QEMU_7_2_INTROSPECTION_NAMES: list[tuple[str, str]] = [
    ("q_empty", "0"),
    ("str", "str"),
    ("q_obj_qmp_capabilities-arg", "172"),
    ("VersionInfo", "173"),
    ("[CommandInfo]", "[174]"),
    ("CommandInfo", "174"),
    ("[SchemaInfo]", "[175]"),
    ("SchemaInfo", "175"),
    ("any", "any"),
    ("q_obj_human-monitor-command-arg", "226"),
    ("StatsFilter", "249"),
    ("[StatsResult]", "[250]"),
    ("StatsResult", "250"),
    ("q_obj_query-stats-schemas-arg", "251"),
    ("[StatsSchema]", "[252]"),
    ("StatsSchema", "252"),
    ("bool", "bool"),
    ("int", "int"),
    ("[int]", "[int]"),
    ("[str]", "[str]"),
    ("[QMPCapability]", "[418]"),
    ("QMPCapability", "418"),
    ("VersionTriple", "419"),
    ("SchemaMetaType", "420"),
    ("SchemaInfoBuiltin", "421"),
    ("SchemaInfoEnum", "422"),
    ("SchemaInfoArray", "423"),
    ("SchemaInfoObject", "424"),
    ("SchemaInfoAlternate", "425"),
    ("SchemaInfoCommand", "426"),
    ("SchemaInfoEvent", "427"),
    ("StatsTarget", "496"),
    ("[StatsRequest]", "[497]"),
    ("StatsRequest", "497"),
    ("StatsVCPUFilter", "498"),
    ("StatsProvider", "499"),
    ("[Stats]", "[500]"),
    ("Stats", "500"),
    ("[StatsSchemaValue]", "[501]"),
    ("StatsSchemaValue", "501"),
    ("JSONType", "599"),
    ("[SchemaInfoEnumMember]", "[600]"),
    ("SchemaInfoEnumMember", "600"),
    ("[SchemaInfoObjectMember]", "[601]"),
    ("SchemaInfoObjectMember", "601"),
    ("[SchemaInfoObjectVariant]", "[602]"),
    ("SchemaInfoObjectVariant", "602"),
    ("[SchemaInfoAlternateMember]", "[603]"),
    ("SchemaInfoAlternateMember", "603"),
    ("StatsValue", "626"),
    ("StatsType", "627"),
    ("StatsUnit", "628"),
]
