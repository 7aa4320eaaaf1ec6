"""Small list helpers shared by the rules."""

def unique(items: list[typing.Any]) -> list[typing.Any]:
    """Returns `items` without repeats, in first-seen order.

    Args:
      items: hashable values (artifacts, strings).

    Returns:
      A new list.
    """
    seen = {}
    out = []
    for item in items:
        if item not in seen:
            seen[item] = True
            out.append(item)
    return out

def link_order(lists: list[list[typing.Any]]) -> list[typing.Any]:
    """Joins lists that each name a library before the libraries it needs, keeping that order.

    Each list is in link order and holds everything its first item needs; keeping only the
    last occurrence of each item keeps every library ahead of all it needs, so a linker
    that reads archives once, in order, resolves every symbol.

    Args:
      lists: lists of hashable values (archives), each in link order.

    Returns:
      A new list without repeats.
    """
    seen = {}
    out = []
    for items in reversed(lists):
        for item in reversed(items):
            if item not in seen:
                seen[item] = True
                out.append(item)
    return list(reversed(out))
