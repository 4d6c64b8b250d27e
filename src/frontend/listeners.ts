/**
 * The controller's event listeners (portChange, fault, backendLost, backendReady, callbackError): on, once,
 * off and emit, with EventEmitter's rule for a listener that throws — it goes to callbackError listeners, or
 * surfaces as an uncaught error when there are none, and never breaks the controller's own state.
 * The controller delegates its public on/once/off here.
 */
import type { ControllerEventName, ControllerEvents } from "./types.js";

type Listener = (...args: never[]) => void;

/** A listener registered with `once`, remembering the caller's function so `off` can find it. */
type OnceWrapper = Listener & { readonly listener: Listener };

export class ControllerListeners {
  private readonly byEvent = new Map<ControllerEventName, Set<Listener>>();

  on<E extends ControllerEventName>(event: E, listener: ControllerEvents[E]): void {
    let set = this.byEvent.get(event);
    if (set === undefined) {
      set = new Set();
      this.byEvent.set(event, set);
    }
    set.add(listener as Listener);
  }

  /** Like `on`, for the next event only: the listener is removed before it runs (`off` removes it too). */
  once<E extends ControllerEventName>(event: E, listener: ControllerEvents[E]): void {
    const wrapper: OnceWrapper = Object.assign(
      (...args: unknown[]) => {
        this.byEvent.get(event)?.delete(wrapper);
        (listener as (...a: unknown[]) => void)(...args);
      },
      { listener: listener as Listener },
    );
    this.on(event, wrapper as unknown as ControllerEvents[E]);
  }

  off<E extends ControllerEventName>(event: E, listener: ControllerEvents[E]): void {
    const set = this.byEvent.get(event);
    if (set === undefined || set.delete(listener as Listener)) return;
    for (const l of set) {
      if ((l as Partial<OnceWrapper>).listener === listener) {
        set.delete(l);
        break;
      }
    }
  }

  /** True when `event` has a listener: lets a caller skip building the event's argument. */
  has(event: ControllerEventName): boolean {
    return (this.byEvent.get(event)?.size ?? 0) > 0;
  }

  emit<E extends ControllerEventName>(event: E, ...args: Parameters<ControllerEvents[E]>): void {
    const set = this.byEvent.get(event);
    if (set === undefined) return;
    for (const listener of [...set]) {
      try {
        (listener as (...a: Parameters<ControllerEvents[E]>) => void)(...args);
      } catch (error) {
        this.reportCallbackError(error, event === "callbackError");
      }
    }
  }

  /** A user callback threw: tell callbackError listeners, or surface it as an uncaught error. */
  reportCallbackError(error: unknown, fromErrorListener = false): void {
    const set = this.byEvent.get("callbackError");
    if (fromErrorListener || set === undefined || set.size === 0) {
      // Like an EventEmitter without an 'error' listener: do not swallow it, but keep our state intact.
      queueMicrotask(() => {
        throw error;
      });
      return;
    }
    this.emit("callbackError", error);
  }
}
