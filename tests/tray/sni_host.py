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


def menu_items(layout, acc):
    _id, props, children = layout
    label = str(props.get("label", ""))
    if label or props.get("type") != "separator":
        acc.append({"id": int(_id), "label": label.replace("_", ""), "toggle": int(props.get("toggle-state", -1))})
    for c in children:
        menu_items(c, acc)
    return acc


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
