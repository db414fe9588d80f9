"""Razorpay's official Python SDK against the Thali sandbox gateway, unchanged but for base_url.

Run by crates/payments/tests/gateway.rs in two steps, with RAZORPAY_BASE_URL, RAZORPAY_KEY_ID and
RAZORPAY_KEY_SECRET in the environment:

  python3 razorpay_sdk.py create
      creates an order and fetches it back; prints {"order_id": ...}
  python3 razorpay_sdk.py settle   (after the test paid the order with outcome "authorized")
      with ORDER_ID, PAYMENT_ID, CHECKOUT_SIGNATURE, WEBHOOK_BODY, WEBHOOK_SIGNATURE and
      WEBHOOK_SECRET: checks both signatures with the SDK, lists the order's payments, captures,
      refunds part then the rest; prints a summary as JSON.

Any failed expectation raises, so the exit status is non-zero.
"""
import json
import os
import sys

import razorpay


def client():
    return razorpay.Client(
        auth=(os.environ["RAZORPAY_KEY_ID"], os.environ["RAZORPAY_KEY_SECRET"]),
        base_url=os.environ["RAZORPAY_BASE_URL"],
    )


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def expect_bad_request(call, message):
    try:
        call()
    except razorpay.errors.BadRequestError as error:
        return str(error)
    raise AssertionError(message)


def create():
    rzp = client()
    order = rzp.order.create({
        "amount": 50000,
        "currency": "INR",
        "receipt": "sdk-receipt-1",
        "notes": {"shop": "chai corner"},
        "partial_payment": False,
    })
    expect(order["entity"] == "order", order)
    expect(order["id"].startswith("order_"), order)
    expect(order["status"] == "created" and order["amount_due"] == 50000, order)
    fetched = rzp.order.fetch(order["id"])
    expect(fetched["id"] == order["id"] and fetched["notes"] == {"shop": "chai corner"}, fetched)
    expect_bad_request(lambda: rzp.order.create({"amount": 50, "currency": "INR"}), "amount below 100 accepted")
    expect_bad_request(lambda: rzp.order.fetch("order_DoesNotExist01"), "an unknown order was found")
    print(json.dumps({"order_id": order["id"]}))


def settle():
    rzp = client()
    order_id = os.environ["ORDER_ID"]
    payment_id = os.environ["PAYMENT_ID"]
    rzp.utility.verify_payment_signature({
        "razorpay_order_id": order_id,
        "razorpay_payment_id": payment_id,
        "razorpay_signature": os.environ["CHECKOUT_SIGNATURE"],
    })
    rzp.utility.verify_webhook_signature(
        os.environ["WEBHOOK_BODY"], os.environ["WEBHOOK_SIGNATURE"], os.environ["WEBHOOK_SECRET"]
    )
    payments = rzp.order.payments(order_id)
    expect(payments["entity"] == "collection" and payments["count"] == 1, payments)
    expect(payments["items"][0]["id"] == payment_id, payments)
    expect(payments["items"][0]["status"] == "authorized", payments)

    captured = rzp.payment.capture(payment_id, 50000, {"currency": "INR"})
    expect(captured["status"] == "captured" and captured["captured"] is True, captured)
    already = expect_bad_request(lambda: rzp.payment.capture(payment_id, 50000, {"currency": "INR"}),
                                 "a second capture was accepted")
    expect("already been captured" in already, already)
    expect(rzp.order.fetch(order_id)["status"] == "paid", "order not paid after capture")

    part = rzp.payment.refund(payment_id, {"amount": 20000})
    expect(part["entity"] == "refund" and part["id"].startswith("rfnd_"), part)
    expect(part["status"] == "processed" and part["amount"] == 20000, part)
    expect_bad_request(lambda: rzp.payment.refund(payment_id, {"amount": 30001}), "over-refund accepted")
    rest = rzp.payment.refund(payment_id, {})
    expect(rest["amount"] == 30000, rest)
    payment = rzp.payment.fetch(payment_id)
    expect(payment["status"] == "refunded" and payment["amount_refunded"] == 50000, payment)
    print(json.dumps({
        "captured": captured["id"],
        "refunds": [part["id"], rest["id"]],
        "payment_status": payment["status"],
        "sdk_version": rzp._get_version(),
    }))


if __name__ == "__main__":
    {"create": create, "settle": settle}[sys.argv[1]]()
