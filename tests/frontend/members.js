// Two members' front ends, each with its own secret, using the unmodified
// bigbluebutton-js client from npm against the node's BBB API gateway.
// Prints one JSON document of what each call answered; tests/members.rs
// checks it. Environment: GATEWAY (http://HOST:PORT/bigbluebutton),
// SECRET_A, SECRET_B, BBB_SECRET.
'use strict'

const bbb = require('bigbluebutton-js')

const gateway = process.env.GATEWAY
const a = bbb.api(gateway, process.env.SECRET_A)
const b = bbb.api(gateway, process.env.SECRET_B)
const shared = bbb.api(gateway, process.env.BBB_SECRET)

// What a front end keeps of an answer: return code, key, and the ids.
function summary(r) {
  const ids = (r.meetings || []).map((m) => String(m.meetingID)).sort()
  return {
    returncode: r.returncode,
    messageKey: r.messageKey || '',
    meetingID: r.meetingID === undefined ? null : String(r.meetingID),
    meetings: ids,
    running: r.running === undefined ? null : r.running,
    participantCount: r.participantCount === undefined ? null : r.participantCount,
  }
}

function recordings(r) {
  const list = Array.isArray(r.recordings) ? r.recordings : []
  return {
    returncode: r.returncode,
    messageKey: r.messageKey || '',
    recordings: list.map((x) => ({
      recordID: String(x.recordID),
      meetingID: String(x.meetingID),
      published: x.published,
    })),
  }
}

async function call(url) {
  return summary(await bbb.http(url))
}

async function main() {
  const out = {}
  const pw = { attendeePW: 'ap', moderatorPW: 'mp', record: 'true' }
  out.createA = await call(a.administration.create('Board A', 'room1', pw))
  out.createB = await call(b.administration.create('Board B', 'room1', pw))
  out.createBOnly = await call(b.administration.create('B only', 'b-only', pw))
  out.listA = await call(a.monitoring.getMeetings())
  out.listB = await call(b.monitoring.getMeetings())
  out.joinOwn = await call(a.administration.join('Ann', 'room1', 'mp', { redirect: 'false', userID: 'ann' }))
  out.infoOwn = await call(a.monitoring.getMeetingInfo('room1'))
  out.joinOther = await call(a.administration.join('Eve', 'b-only', 'ap', { redirect: 'false' }))
  out.infoOther = await call(a.monitoring.getMeetingInfo('b-only'))
  out.runningOther = await call(a.monitoring.isMeetingRunning('b-only'))
  out.endOther = await call(a.administration.end('b-only', 'mp'))
  out.listShared = await call(shared.monitoring.getMeetings())
  out.listBAfter = await call(b.monitoring.getMeetings())
  // Recordings: each member's own, and hands off the other's.
  out.endA = await call(a.administration.end('room1', 'mp'))
  out.endB = await call(b.administration.end('room1', 'mp'))
  const ra = await bbb.http(a.recording.getRecordings({}))
  const rb = await bbb.http(b.recording.getRecordings({ meetingID: 'room1' }))
  out.recA = recordings(ra)
  out.recB = recordings(rb)
  const bRec = String(rb.recordings[0].recordID)
  const aRec = String(ra.recordings[0].recordID)
  out.recAOfB = recordings(await bbb.http(a.recording.getRecordings({ recordID: bRec })))
  out.publishOther = await call(a.recording.publishRecordings(bRec, false))
  out.updateOther = await call(a.recording.updateRecordings(bRec, { 'meta_gl-listed': 'false' }))
  out.deleteOther = await call(a.recording.deleteRecordings(bRec))
  out.publishOwn = await call(a.recording.publishRecordings(aRec, false))
  out.recAAfter = recordings(await bbb.http(a.recording.getRecordings({})))
  out.recBAfter = recordings(await bbb.http(b.recording.getRecordings({})))
  console.log(JSON.stringify(out, null, 1))
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e)
  process.exit(1)
})
