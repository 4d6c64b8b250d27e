/**
 * Nominal ("branded") number types. Every number that crosses a trust boundary
 * (ring index, grant reference, guest frame, URB id, port, device address) gets
 * its own brand so the compiler refuses to mix them; arithmetic on them goes
 * through named helpers in the module that owns the brand.
 */
declare const brand: unique symbol;
export type Brand<T, B extends string> = T & { readonly [brand]: B };
