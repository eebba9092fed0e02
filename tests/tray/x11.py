#!/usr/bin/env python3
"""The tray test's hands on the X display ($DISPLAY, $XAUTHORITY of the tray):

    x11.py windows        one JSON line: [{"id", "name", "mapped"}] of the top-level windows
    x11.py close NAME     asks the window titled NAME to close, as a window manager's
                          close button does (WM_DELETE_WINDOW); prints CLOSED or NONE
    x11.py shot PATH      the whole screen as a PNG image (for a failed test's artifacts)
"""
import json
import struct
import sys
import zlib

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
    elif sys.argv[1] == "shot":
        root = d.screen().root
        g = root.get_geometry()
        img = root.get_image(0, 0, g.width, g.height, X.ZPixmap, 0xFFFFFFFF)
        data = img.data if isinstance(img.data, bytes) else img.data.encode("latin-1")
        rows = bytearray()
        for y in range(g.height):
            rows.append(0)  # filter: none
            line = data[y * g.width * 4:(y + 1) * g.width * 4]
            for i in range(0, len(line), 4):  # BGRX
                rows += bytes((line[i + 2], line[i + 1], line[i]))

        def chunk(kind, body):
            return (struct.pack(">I", len(body)) + kind + body
                    + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

        with open(sys.argv[2], "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n"
                    + chunk(b"IHDR", struct.pack(">IIBBBBB", g.width, g.height, 8, 2, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(bytes(rows)))
                    + chunk(b"IEND", b""))
        print("SHOT")


main()
