#!/usr/bin/env python3
"""The tray test's hands on the X display ($DISPLAY, $XAUTHORITY of the tray):

    x11.py windows        one JSON line: [{"id", "name", "mapped"}] of the top-level windows
    x11.py close NAME     asks the window titled NAME to close, as a window manager's
                          close button does (WM_DELETE_WINDOW); prints CLOSED or NONE
"""
import json
import sys

from Xlib import X, display, protocol


def tops(d):
    out = []
    for w in d.screen().root.query_tree().children:
        try:
            name = w.get_wm_name()
            attrs = w.get_attributes()
        except Exception:
            continue
        if name:
            out.append((w, name if isinstance(name, str) else name.decode(errors="replace"),
                        attrs.map_state == X.IsViewable))
    return out


def main():
    d = display.Display()
    if sys.argv[1] == "windows":
        print(json.dumps([{"id": w.id, "name": n, "mapped": m} for w, n, m in tops(d)]))
    elif sys.argv[1] == "close":
        want = sys.argv[2]
        protocols = d.intern_atom("WM_PROTOCOLS")
        delete = d.intern_atom("WM_DELETE_WINDOW")
        for w, name, mapped in tops(d):
            if name == want and mapped:
                ev = protocol.event.ClientMessage(window=w, client_type=protocols,
                                                  data=(32, [delete, X.CurrentTime, 0, 0, 0]))
                w.send_event(ev)
                d.flush()
                print("CLOSED")
                return
        print("NONE")


main()
