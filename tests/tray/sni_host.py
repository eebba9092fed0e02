"""A tray host for tests/tests/tray.rs, on the session bus: a StatusNotifierWatcher
(what a desktop's panel provides) and a notification server that prints what it
is asked to show. It reads commands on stdin and answers on stdout, one line each:

  state           -> STATE {"label", "title", "menu": [{"id", "label", "toggle"}]}
  click TEXT      -> CLICKED <id>   (a menu item whose label contains TEXT)

and prints REGISTERED <item> when a tray item registers, NOTIFY {json} for every
notification. Uses Debian's python3-dbus and python3-gi.
"""
import json
import os
import sys
import threading

import dbus
import dbus.mainloop.glib
import dbus.service
from gi.repository import GLib

dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
bus = dbus.SessionBus()
WATCHER = "org.kde.StatusNotifierWatcher"
PROPS = "org.freedesktop.DBus.Properties"


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Watcher(dbus.service.Object):
    def __init__(self):
        self.items = []
        self.name = dbus.service.BusName(WATCHER, bus)
        super().__init__(self.name, "/StatusNotifierWatcher")

    @dbus.service.method(WATCHER, in_signature="s", sender_keyword="sender")
    def RegisterStatusNotifierItem(self, service, sender=None):
        item = (sender, service) if service.startswith("/") else (service, "/StatusNotifierItem")
        self.items.append(item)
        self.StatusNotifierItemRegistered(item[0] + item[1])
        out("REGISTERED " + item[0] + item[1])

    @dbus.service.method(WATCHER, in_signature="s")
    def RegisterStatusNotifierHost(self, service):
        pass

    @dbus.service.signal(WATCHER, signature="s")
    def StatusNotifierItemRegistered(self, item):
        pass

    @dbus.service.signal(WATCHER, signature="s")
    def StatusNotifierItemUnregistered(self, item):
        pass

    @dbus.service.signal(WATCHER, signature="")
    def StatusNotifierHostRegistered(self):
        pass

    def _props(self):
        return {
            "RegisteredStatusNotifierItems": dbus.Array([a + b for a, b in self.items], signature="s"),
            "IsStatusNotifierHostRegistered": dbus.Boolean(True),
            "ProtocolVersion": dbus.Int32(0),
        }

    @dbus.service.method(PROPS, in_signature="ss", out_signature="v")
    def Get(self, interface, prop):
        return self._props()[prop]

    @dbus.service.method(PROPS, in_signature="s", out_signature="a{sv}")
    def GetAll(self, interface):
        return self._props()


class Notifications(dbus.service.Object):
    IFACE = "org.freedesktop.Notifications"

    def __init__(self):
        self.n = 0
        self.name = dbus.service.BusName(self.IFACE, bus)
        super().__init__(self.name, "/org/freedesktop/Notifications")

    @dbus.service.method(IFACE, in_signature="susssasa{sv}i", out_signature="u")
    def Notify(self, app, replaces, icon, summary, body, actions, hints, timeout):
        self.n += 1
        out("NOTIFY " + json.dumps({"app": str(app), "summary": str(summary), "body": str(body)}))
        return dbus.UInt32(self.n)

    @dbus.service.method(IFACE, in_signature="", out_signature="as")
    def GetCapabilities(self):
        return ["body"]

    @dbus.service.method(IFACE, in_signature="", out_signature="ssss")
    def GetServerInformation(self):
        return ("mesh-test-notifications", "robbie-mesh", "1", "1.2")

    @dbus.service.method(IFACE, in_signature="u")
    def CloseNotification(self, nid):
        pass


watcher = Watcher()
host = dbus.service.BusName("org.kde.StatusNotifierHost-%d" % os.getpid(), bus)
notifications = Notifications()


def shown(label):
    """A dbusmenu label as a panel shows it: "__" is "_", a lone "_" marks the
    access key and is not shown."""
    return "_".join(part.replace("_", "") for part in label.split("__"))


def menu_items(layout, acc):
    _id, props, children = layout
    label = str(props.get("label", ""))
    if label or props.get("type") != "separator":
        acc.append({"id": int(_id), "label": shown(label), "toggle": int(props.get("toggle-state", -1))})
    for c in children:
        menu_items(c, acc)
    return acc


def png_centre(path):
    """The RGB of the centre pixel of an 8-bit RGBA PNG file, as #rrggbb."""
    import struct
    import zlib
    data = open(path, "rb").read()
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, bpp, stride = zlib.decompress(idat), 4, w * 4
    rows, prev, i = [], bytearray(stride), 0
    while i < len(raw):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    px = rows[len(rows) // 2][(w // 2) * 4:(w // 2) * 4 + 3]
    return "#%02x%02x%02x" % tuple(px)


def icon_colour(props):
    name = str(props.get("IconName", ""))
    theme = str(props.get("IconThemePath", ""))
    for path in (name, os.path.join(theme, name + ".png"), os.path.join(theme, name)):
        if path and os.path.isfile(path):
            try:
                return png_centre(path)
            except Exception as e:  # the test shows it
                return "unreadable: %r" % e
    return "no icon file (IconName %r, IconThemePath %r)" % (name, theme)


def item_state():
    if not watcher.items:
        return {"error": "no item registered"}
    name, path = watcher.items[-1]
    obj = bus.get_object(name, path)
    props = obj.GetAll("org.kde.StatusNotifierItem", dbus_interface=PROPS)
    menu_path = props.get("Menu")
    menu = []
    if menu_path:
        m = bus.get_object(name, menu_path)
        _rev, layout = m.GetLayout(0, -1, [], dbus_interface="com.canonical.dbusmenu")
        menu = menu_items(layout, [])
    return {
        "label": str(props.get("XAyatanaLabel", "")),
        "title": str(props.get("Title", "")),
        "status": str(props.get("Status", "")),
        "icon": icon_colour(props),
        "menu": [i for i in menu if i["id"] != 0],
        "menu_path": str(menu_path or ""),
        "name": str(name),
    }


def command(line):
    line = line.strip()
    try:
        if line == "state":
            out("STATE " + json.dumps(item_state()))
        elif line.startswith("click "):
            text = line[len("click "):]
            st = item_state()
            hit = [i for i in st["menu"] if text in i["label"]]
            if not hit:
                out("CLICKED none")
                return False
            m = bus.get_object(st["name"], st["menu_path"])
            m.Event(dbus.Int32(hit[0]["id"]), "clicked", dbus.String("", variant_level=1), dbus.UInt32(0),
                    dbus_interface="com.canonical.dbusmenu")
            out("CLICKED %d" % hit[0]["id"])
    except Exception as e:  # the test reads the error
        out("ERROR " + repr(e))
    return False


def stdin_reader():
    for line in sys.stdin:
        GLib.idle_add(command, line)
    GLib.idle_add(loop.quit)


loop = GLib.MainLoop()
threading.Thread(target=stdin_reader, daemon=True).start()
out("READY")
loop.run()
